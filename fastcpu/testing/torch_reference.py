"""PyTorch implementations of the reference (ming024/FastSpeech2) building blocks and model,
written from the reference's specification (architecture, state_dict names, loss; README
"FastSpeech2"): the oracle of the parity tests and the PyTorch side of the benchmarks. Needs
torch (the ``test`` extra); never imported by training code."""
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


# --------------------------------------------------------------------------- FastSpeech2
import numpy as np  # noqa: E402
from collections import OrderedDict  # noqa: E402


def sinusoid(n_position, d_hid):
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(d_hid)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / d_hid)
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.tensor(angle, dtype=torch.float32)


class TorchFFN(nn.Module):
    def __init__(self, d_in, d_hid, kernel_size, dropout):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, kernel_size[0], padding=(kernel_size[0] - 1) // 2)
        self.w_2 = nn.Conv1d(d_hid, d_in, kernel_size[1], padding=(kernel_size[1] - 1) // 2)
        self.layer_norm = nn.LayerNorm(d_in)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = self.w_2(torch.relu(self.w_1(x.transpose(1, 2)))).transpose(1, 2)
        return self.layer_norm(self.dropout(y) + x)


class TorchFFTBlock(nn.Module):
    def __init__(self, d_model, n_head, d_inner, kernel_size, dropout):
        super().__init__()
        self.slf_attn = TorchMultiHeadAttention(n_head, d_model, d_model // n_head, dropout)
        self.pos_ffn = TorchFFN(d_model, d_inner, kernel_size, dropout)

    def forward(self, x, pad):
        x = self.slf_attn(x, pad).masked_fill(pad[..., None], 0)
        return self.pos_ffn(x).masked_fill(pad[..., None], 0)


class TorchEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.src_word_emb = nn.Embedding(c.n_src_vocab, c.encoder_hidden, padding_idx=0)
        self.position_enc = nn.Parameter(sinusoid(c.max_seq_len + 1, c.encoder_hidden)[None],
                                         requires_grad=False)
        self.layer_stack = nn.ModuleList([
            TorchFFTBlock(c.encoder_hidden, c.encoder_head, c.conv_filter_size,
                          c.conv_kernel_size, c.encoder_dropout) for _ in range(c.encoder_layer)])

    def forward(self, texts, pad):
        x = self.src_word_emb(texts) + self.position_enc[:, :texts.shape[1]]
        for layer in self.layer_stack:
            x = layer(x, pad)
        return x


class TorchDecoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.max_seq_len = c.max_seq_len
        self.position_enc = nn.Parameter(sinusoid(c.max_seq_len + 1, c.decoder_hidden)[None],
                                         requires_grad=False)
        self.layer_stack = nn.ModuleList([
            TorchFFTBlock(c.decoder_hidden, c.decoder_head, c.conv_filter_size,
                          c.conv_kernel_size, c.decoder_dropout) for _ in range(c.decoder_layer)])

    def forward(self, x, pad):
        T = min(x.shape[1], self.max_seq_len)
        x, pad = x[:, :T] + self.position_enc[:, :T], pad[:, :T]
        for layer in self.layer_stack:
            x = layer(x, pad)
        return x, pad


class TorchConv(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, k, padding=(k - 1) // 2)

    def forward(self, x):                                   # (B, T, C) in and out
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class TorchVariancePredictor(nn.Module):
    def __init__(self, c):
        super().__init__()
        f, k = c.vp_filter_size, c.vp_kernel_size
        self.conv_layer = nn.Sequential(OrderedDict([
            ("conv1d_1", TorchConv(c.encoder_hidden, f, k)), ("relu_1", nn.ReLU()),
            ("layer_norm_1", nn.LayerNorm(f)), ("dropout_1", nn.Dropout(c.vp_dropout)),
            ("conv1d_2", TorchConv(f, f, k)), ("relu_2", nn.ReLU()),
            ("layer_norm_2", nn.LayerNorm(f)), ("dropout_2", nn.Dropout(c.vp_dropout))]))
        self.linear_layer = nn.Linear(f, 1)

    def forward(self, x, pad):
        return self.linear_layer(self.conv_layer(x)).squeeze(-1).masked_fill(pad, 0.0)


class TorchVarianceAdaptor(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.duration_predictor = TorchVariancePredictor(c)
        self.pitch_predictor = TorchVariancePredictor(c)
        self.energy_predictor = TorchVariancePredictor(c)
        self.pitch_bins = nn.Parameter(torch.linspace(*c.pitch_range, c.n_bins - 1),
                                       requires_grad=False)
        self.energy_bins = nn.Parameter(torch.linspace(*c.energy_range, c.n_bins - 1),
                                        requires_grad=False)
        self.pitch_embedding = nn.Embedding(c.n_bins, c.encoder_hidden)
        self.energy_embedding = nn.Embedding(c.n_bins, c.encoder_hidden)

    @staticmethod
    def regulate(x, durations, max_len):
        rows = [torch.repeat_interleave(x[b], durations[b].clamp(min=0), dim=0)
                for b in range(x.shape[0])]
        T = max(r.shape[0] for r in rows) if max_len is None else max_len
        mel_len = torch.tensor([min(r.shape[0], T) for r in rows])
        return torch.stack([F_pad(r[:T], T) for r in rows]), mel_len

    def forward(self, x, src_pad, max_len, p_t, e_t, d_t, p_c=1.0, e_c=1.0, d_c=1.0):
        log_d = self.duration_predictor(x, src_pad)
        p = self.pitch_predictor(x, src_pad)
        if p_t is None:
            p = p * p_c
        x = x + self.pitch_embedding(torch.bucketize(p if p_t is None else p_t, self.pitch_bins))
        e = self.energy_predictor(x, src_pad)
        if e_t is None:
            e = e * e_c
        x = x + self.energy_embedding(torch.bucketize(e if e_t is None else e_t,
                                                      self.energy_bins))
        if d_t is None:
            d_t = torch.clamp(torch.round(torch.exp(log_d) - 1) * d_c, min=0).long()
        x, mel_len = self.regulate(x, d_t, max_len)
        return x, p, e, log_d, mel_len


def F_pad(r, T):
    return torch.nn.functional.pad(r, (0, 0, 0, T - r.shape[0]))


class TorchPostNet(nn.Module):
    def __init__(self, c):
        super().__init__()
        e, k, n = c.postnet_embedding_dim, c.postnet_kernel_size, c.postnet_n_convolutions
        ch = [c.n_mel_channels] + [e] * (n - 1) + [c.n_mel_channels]
        self.convolutions = nn.ModuleList([
            nn.Sequential(TorchConv(ch[i], ch[i + 1], k), _BNChannelsLast(ch[i + 1]))
            for i in range(n)])
        self.p = c.postnet_dropout

    def forward(self, x):
        for i, conv in enumerate(self.convolutions):
            x = conv(x)
            if i < len(self.convolutions) - 1:
                x = torch.tanh(x)
            x = torch.nn.functional.dropout(x, self.p, self.training)
        return x


class _BNChannelsLast(nn.BatchNorm1d):
    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class TorchFastSpeech2(nn.Module):
    """The reference architecture (spec §2), channels-last at module boundaries."""

    def __init__(self, c):
        super().__init__()
        self.encoder = TorchEncoder(c)
        self.variance_adaptor = TorchVarianceAdaptor(c)
        self.decoder = TorchDecoder(c)
        self.mel_linear = nn.Linear(c.decoder_hidden, c.n_mel_channels)
        self.postnet = TorchPostNet(c)

    def forward(self, texts, src_lens, mel_lens=None, max_mel_len=None, p_t=None, e_t=None,
                d_t=None, p_c=1.0, e_c=1.0, d_c=1.0):
        src_pad = key_padding_mask(src_lens, texts.shape[1])
        x = self.encoder(texts, src_pad)
        x, p, e, log_d, mel_len = self.variance_adaptor(x, src_pad, max_mel_len, p_t, e_t, d_t,
                                                        p_c, e_c, d_c)
        if mel_lens is None:
            mel_lens = mel_len
        x, mel_pad = self.decoder(x, key_padding_mask(mel_lens, x.shape[1]))
        mel = self.mel_linear(x)
        return mel, self.postnet(mel) + mel, p, e, log_d, src_pad, mel_pad


def torch_loss(out, mels, pitches, energies, durations):
    mel, post, p, e, log_d, src_pad, mel_pad = out
    src_ok, mel_ok = ~src_pad, ~mel_pad
    mels = mels[:, :mel_ok.shape[1]]
    l1, mse = nn.L1Loss(), nn.MSELoss()
    m = mel_ok[..., None].expand_as(mel)
    terms = {
        "mel": l1(mel.masked_select(m), mels.masked_select(m)),
        "postnet_mel": l1(post.masked_select(m), mels.masked_select(m)),
        "pitch": mse(p.masked_select(src_ok), pitches.masked_select(src_ok)),
        "energy": mse(e.masked_select(src_ok), energies.masked_select(src_ok)),
        "duration": mse(log_d.masked_select(src_ok),
                        torch.log(durations.float() + 1).masked_select(src_ok)),
    }
    terms["total"] = sum(terms[k] for k in ("mel", "postnet_mel", "pitch", "energy", "duration"))
    return terms


class ScheduledOptim:
    """The reference's optimizer wrapper (spec §4.1): ``torch.optim.Adam`` over
    ``model.parameters()`` with the YAML's betas/eps/weight_decay (lr left at torch's default
    until the first update); before each update ``current_step += 1`` and every group's ``lr``
    becomes ``init_lr * min(step^-0.5, warm_up^-1.5 * step) * anneal`` — computed with numpy, so
    the lr stored in ``state_dict()`` is a ``numpy.float64``, as in the reference's files."""

    def __init__(self, model, opt_cfg, encoder_hidden, current_step=0):
        self._optimizer = torch.optim.Adam(model.parameters(), betas=list(opt_cfg.betas),
                                           eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
        self.n_warmup_steps = opt_cfg.warm_up_step
        self.anneal_steps, self.anneal_rate = list(opt_cfg.anneal_steps), opt_cfg.anneal_rate
        self.current_step = current_step
        self.init_lr = np.power(encoder_hidden, -0.5)

    def lr_scale(self):
        s = self.current_step
        lr = np.min([np.power(s, -0.5), np.power(self.n_warmup_steps, -1.5) * s])
        for a in self.anneal_steps:
            if s > a:
                lr = lr * self.anneal_rate
        return lr

    def step_and_update_lr(self):
        self.current_step += 1
        lr = self.init_lr * self.lr_scale()
        for g in self._optimizer.param_groups:
            g["lr"] = lr
        self._optimizer.step()

    def zero_grad(self):
        self._optimizer.zero_grad()


def reference_train_step(model, optim, batch, clip=1.0):
    """One step of the reference's train.py loop (grad_acc_step 1) on a batch dict of arrays
    (texts, src_lens, mels, mel_lens, max_mel_len, pitches, energies, durations)."""
    dtype = next(model.parameters()).dtype              # float64 models take float64 targets
    t = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    t = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
         for k, v in t.items()}
    out = model(t["texts"], t["src_lens"], t["mel_lens"], batch["max_mel_len"], t["pitches"],
                t["energies"], t["durations"])
    losses = torch_loss(out, t["mels"], t["pitches"], t["energies"], t["durations"])
    losses["total"].backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optim.step_and_update_lr()
    optim.zero_grad()
    return losses


def save_reference_checkpoint(path, model, optim):
    """What the reference's train.py writes: the model's state_dict and the inner Adam's."""
    torch.save({"model": model.state_dict(), "optimizer": optim._optimizer.state_dict()}, path)


def write_reference_config(directory, cfg, preprocessed_path):
    """The reference's ``preprocess.yaml`` / ``model.yaml`` / ``train.yaml`` for a
    ``fastcpu.config.Config`` whose PostNet is the reference's hard-coded one."""
    import yaml
    from pathlib import Path
    m, o, t = cfg.model, cfg.optimizer, cfg.train
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "preprocess": {"dataset": cfg.name, "path": {"preprocessed_path": str(preprocessed_path)},
                       "preprocessing": {"pitch": {"feature": m.pitch_feature,
                                                   "normalization": True},
                                         "energy": {"feature": m.energy_feature,
                                                    "normalization": True},
                                         "mel": {"n_mel_channels": m.n_mel_channels}}},
        "model": {"transformer": {k: getattr(m, k) for k in (
                      "encoder_layer", "encoder_head", "encoder_hidden", "decoder_layer",
                      "decoder_head", "decoder_hidden", "conv_filter_size", "conv_kernel_size",
                      "encoder_dropout", "decoder_dropout")},
                  "variance_predictor": {"filter_size": m.vp_filter_size,
                                         "kernel_size": m.vp_kernel_size, "dropout": m.vp_dropout},
                  "variance_embedding": {"pitch_quantization": m.pitch_quantization,
                                         "energy_quantization": m.energy_quantization,
                                         "n_bins": m.n_bins},
                  "multi_speaker": m.multi_speaker, "max_seq_len": m.max_seq_len},
        "train": {"optimizer": {"batch_size": t.batch_size, "betas": list(o.betas), "eps": o.eps,
                                "weight_decay": o.weight_decay,
                                "grad_clip_thresh": o.grad_clip_thresh,
                                "grad_acc_step": o.grad_acc_step, "warm_up_step": o.warm_up_step,
                                "anneal_steps": list(o.anneal_steps),
                                "anneal_rate": o.anneal_rate},
                  "step": {k: getattr(t, k) for k in ("total_step", "log_step", "synth_step",
                                                      "val_step", "save_step")}},
    }
    for name, data in files.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return d
