"""Layer 3/4 for the model: FastSpeech2 against a PyTorch implementation of the reference
(fastcpu/testing/torch_reference.py) with the same weights — outputs, loss terms, every gradient, Adam
steps with the Noam schedule; state_dict and parameter count; dropout statistics; inference from
phoneme ids; checkpoint conversion both ways."""
import dataclasses

import numpy as np
import pytest
import torch

from fastcpu.startup import config_path
from fastcpu import nn
from fastcpu.autograd import no_grad
from fastcpu.config import ModelConfig, load_config
from fastcpu.models import FastSpeech2, FastSpeech2Loss
from fastcpu.optim import Adam
from tests.conftest import assert_close
from fastcpu.testing.torch_reference import TorchFastSpeech2, torch_loss

NO_DROPOUT = dict(encoder_dropout=0.0, decoder_dropout=0.0, vp_dropout=0.0, postnet_dropout=0.0)
SMALL = dict(encoder_layer=1, decoder_layer=2, encoder_hidden=32, decoder_hidden=32,
             conv_filter_size=48, vp_filter_size=24, n_bins=16, postnet_embedding_dim=24,
             max_seq_len=100)


def make_batch(rng, B, max_phones, max_frames, min_phones=3):
    """A ragged batch of teacher-forcing targets (the reference's 12-field batch, as arrays)."""
    L = rng.integers(min_phones, max_phones + 1, B)
    L[0] = max_phones
    Lm = int(L.max())
    texts = np.zeros((B, Lm), np.int64)
    d = np.zeros((B, Lm), np.int64)
    for b in range(B):
        texts[b, :L[b]] = rng.integers(1, 360, L[b])
        budget = rng.integers(max(L[b], max_frames // 2), max_frames + 1)
        d[b, :L[b]] = rng.multinomial(budget - L[b], np.ones(L[b]) / L[b]) + 1
    mel_lens = d.sum(1)
    T = int(mel_lens.max())
    mels = rng.standard_normal((B, T, 80)).astype(np.float32) - 5
    for b in range(B):
        mels[b, mel_lens[b]:] = 0
    pitches = np.where(np.arange(Lm) < L[:, None], rng.standard_normal((B, Lm)) * 2, 0)
    energies = np.where(np.arange(Lm) < L[:, None], rng.standard_normal((B, Lm)) * 2, 0)
    return dict(texts=texts, src_lens=L, mels=mels, mel_lens=mel_lens, max_mel_len=T,
                pitches=pitches.astype(np.float32), energies=energies.astype(np.float32),
                durations=d)


def pair(cfg, seed):
    """A torch reference model and a fastcpu model holding the same (torch-initialised) weights."""
    torch.manual_seed(seed)
    theirs = TorchFastSpeech2(cfg)
    ours = FastSpeech2(cfg)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def run_ours(model, b):
    out = model(np.zeros(len(b["src_lens"])), b["texts"], b["src_lens"], None, b["mels"],
                b["mel_lens"], b["max_mel_len"], b["pitches"], b["energies"], b["durations"])
    return out, FastSpeech2Loss()(out, b["mels"], b["pitches"], b["energies"], b["durations"])


def run_theirs(model, b):
    t = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in b.items()}
    out = model(t["texts"], t["src_lens"], t["mel_lens"], b["max_mel_len"], t["pitches"],
                t["energies"], t["durations"])
    return out, torch_loss(out, t["mels"], t["pitches"], t["energies"], t["durations"])


def check_parity(cfg, batch, seed, adam_steps=0):
    ours, theirs = pair(cfg, seed)
    buf = nn.flatten_parameters(ours)
    out, losses = run_ours(ours, batch)
    tout, tlosses = run_theirs(theirs, batch)
    for name, a, b in [("mel", out.mel, tout[0]), ("postnet_mel", out.postnet_mel, tout[1]),
                       ("pitch", out.pitch, tout[2]), ("energy", out.energy, tout[3]),
                       ("log_duration", out.log_duration, tout[4])]:
        assert_close(a.data, b.detach().numpy(), 1e-4, name)
    for k, v in tlosses.items():
        assert abs(losses[k].item() - v.item()) <= 1e-5 * max(abs(v.item()), 1.0), \
            (k, losses[k].item(), v.item())
    losses["total"].backward()
    tlosses["total"].backward()
    tgrads = {n: p.grad.numpy() for n, p in theirs.named_parameters() if p.requires_grad}
    gmax = max(np.abs(g).max() for g in tgrads.values())
    # Two kinds of parameter have a gradient that is exactly 0 in maths: a conv bias feeding a
    # training-mode BatchNorm (BN removes the mean) and an attention key bias (softmax is
    # shift-invariant). Both sides hold rounding noise there, which Adam normalises to +-lr.
    noise = {n for n, g in tgrads.items() if np.abs(g).max() < 1e-5 * gmax}
    assert all((n.startswith("postnet.") and n.endswith(".0.conv.bias"))
               or n.endswith("slf_attn.w_ks.bias") for n in noise), noise
    for n, p in ours.named_parameters():
        if p.requires_grad:
            assert_close(p.grad, tgrads[n], 1e-3, f"grad {n}", floor=1e-3 * gmax)
    if adam_steps:
        before = {k: v.copy() for k, v in ours.state_dict().items()}
        ocfg = load_config(config_path("ljspeech")).optimizer
        opt = Adam(buf, ocfg, hidden=cfg.encoder_hidden)
        tparams = [p for p in theirs.parameters() if p.requires_grad]
        topt = torch.optim.Adam(tparams, lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
        for step in range(1, adam_steps + 1):
            if step > 1:
                buf.zero_grad()
                run_ours(ours, batch)[1]["total"].backward()
                topt.zero_grad()
                run_theirs(theirs, batch)[1]["total"].backward()
            norm, lr, stepped = opt.step()
            tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.0).item()
            for g in topt.param_groups:
                g["lr"] = cfg.encoder_hidden ** -0.5 * min(step ** -0.5, 4000 ** -1.5 * step)
            topt.step()
            assert stepped and abs(lr - topt.param_groups[0]["lr"]) < 1e-15
            assert abs(norm - tnorm) <= 1e-3 * tnorm
        # Parameters: norm-wise relative error <= 1e-5 per tensor. Updates (after - before):
        # norm-wise relative error <= 1e-2 per tensor — 3 Noam warm-up steps move a weight by
        # only ~1e-4 of its size, so the update check is the one with teeth. (Element-wise, a few
        # of millions of weights have gradients at the rounding-noise level, where Adam's
        # normalisation turns any last-bit difference into a +-lr step for any two
        # implementations; norm-wise errors bound those without ignoring them.)
        tsd = theirs.state_dict()
        lr_sum = sum(cfg.encoder_hidden ** -0.5 * min(t ** -0.5, 4000 ** -1.5 * t)
                     for t in range(1, adam_steps + 1))
        worst = {}
        for k, v in ours.state_dict().items():
            t = tsd[k].numpy()
            if k in noise:        # steps on noise: each side moves by at most ~lr per step
                assert np.abs(v - t).max() <= 2.5 * lr_sum, k
                continue
            if v.dtype.kind != "f":
                np.testing.assert_array_equal(v, t)
                continue
            # (RMS floor 1e-3: zero-initialised LayerNorm biases are all update; the update check
            # below is what tests them)
            rel = np.linalg.norm(v - t) / max(np.linalg.norm(t), 1e-3 * np.sqrt(t.size))
            d_o, d_t = v - before[k], t - before[k]
            upd = np.linalg.norm(d_o - d_t) / max(np.linalg.norm(d_t), 1e-30)
            worst[k] = (rel, upd)
            assert rel <= 1e-5, f"{k}: parameters differ by {rel:.3g} (norm-wise)"
            if np.linalg.norm(d_t) > 0:
                assert upd <= 1e-2, f"{k}: updates differ by {upd:.3g} (norm-wise)"
        return worst


def test_state_dict_and_parameter_count_of_ljspeech_config():
    cfg = load_config(config_path("ljspeech")).model
    ours = FastSpeech2(cfg)
    theirs = TorchFastSpeech2(cfg)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert len(sd) == 234
    assert list(sd) == list(tsd)
    assert all(sd[k].shape == tuple(tsd[k].shape) for k in sd)
    assert all(sd[k].dtype == tsd[k].numpy().dtype for k in sd)
    assert ours.num_parameters() == 35_159_361
    assert ours.num_parameters(trainable_only=True) == 34_646_339
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_parity_full_ljspeech_size():
    """Full LJSpeech model, batch 4, <= 120 phonemes / <= 600 frames, 3 Noam clip+Adam steps."""
    cfg = dataclasses.replace(load_config(config_path("ljspeech")).model, **NO_DROPOUT)
    batch = make_batch(np.random.default_rng(0), 4, 120, 600)
    check_parity(cfg, batch, seed=0, adam_steps=3)


@pytest.mark.parametrize("seed", range(8))
def test_parity_small_many_seeds(seed):
    cfg = ModelConfig(**SMALL, **NO_DROPOUT)
    rng = np.random.default_rng(100 + seed)
    batch = make_batch(rng, int(rng.integers(1, 5)), int(rng.integers(3, 25)),
                       int(rng.integers(30, 120)))
    check_parity(cfg, batch, seed=seed, adam_steps=3)


def test_decoder_truncates_at_max_seq_len_like_the_reference():
    cfg = ModelConfig(**{**SMALL, "max_seq_len": 40}, **NO_DROPOUT)
    batch = make_batch(np.random.default_rng(5), 3, 12, 90)
    assert batch["max_mel_len"] > 40
    check_parity(cfg, batch, seed=3)


def test_dropout_statistics_match_pytorch():
    """With dropout on, the training loss averaged over seeds is within 2% of PyTorch's."""
    cfg = ModelConfig(**SMALL)
    batch = make_batch(np.random.default_rng(1), 4, 20, 100)
    ours, theirs = pair(cfg, 0)
    ours_l, theirs_l = [], []
    for s in range(40):
        nn.init.manual_seed(s)
        torch.manual_seed(s)
        with no_grad():
            ours_l.append(run_ours(ours, batch)[1]["total"].item())
        with torch.no_grad():
            theirs_l.append(run_theirs(theirs, batch)[1]["total"].item())
    m_o, m_t = np.mean(ours_l), np.mean(theirs_l)
    assert abs(m_o - m_t) <= 0.02 * m_t, (m_o, m_t)
    ours.eval()
    theirs.eval()
    with no_grad():
        off = run_ours(ours, batch)[1]["total"].item()
    assert abs(off - m_o) > 1e-3 * m_o            # dropout really changed the loss


def test_inference_from_phoneme_ids_matches_pytorch():
    cfg = ModelConfig(**SMALL)
    ours, theirs = pair(cfg, 4)
    with torch.no_grad():                 # durations ~ 2-5 frames per phoneme
        theirs.variance_adaptor.duration_predictor.linear_layer.bias.fill_(1.3)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.eval()
    theirs.eval()
    b = make_batch(np.random.default_rng(2), 3, 15, 60)
    with no_grad():
        out = ours.infer(b["texts"], b["src_lens"])
    with torch.no_grad():
        t = theirs(torch.tensor(b["texts"]), torch.tensor(b["src_lens"]))
    np.testing.assert_array_equal(out.mel_lens, (~t[6]).sum(1).numpy())
    assert_close(out.postnet_mel.data, t[1].numpy(), 1e-4, "postnet mel")
    assert_close(out.log_duration.data, t[4].numpy(), 1e-4, "log duration")


def test_inference_with_all_zero_durations_is_clean():
    """A sequence whose predicted durations are all 0: no NaN, 0 frames, others unaffected."""
    cfg = ModelConfig(**SMALL)
    model = FastSpeech2(cfg).eval()
    lin = model.variance_adaptor.duration_predictor.linear_layer
    lin.weight.data[...] = 0
    lin.bias.data[...] = np.log(4)                         # every duration = 3
    b = make_batch(np.random.default_rng(3), 3, 10, 40)
    with no_grad():
        out = model.infer(b["texts"], b["src_lens"], d_control=np.array([1.0, 0.0, 1.0]))
        alone = model.infer(b["texts"][:1], b["src_lens"][:1])
        none = model.infer(b["texts"], b["src_lens"], d_control=0.0)
    assert np.isfinite(out.postnet_mel.data).all()
    np.testing.assert_array_equal(out.mel_lens, [3 * b["src_lens"][0], 0, 3 * b["src_lens"][2]])
    assert not out.duration_rounded[1].any()
    n = alone.mel_lens[0]
    assert_close(out.postnet_mel.data[0, :n], alone.postnet_mel.data[0, :n], 1e-5, "row 0")
    assert none.postnet_mel.shape[1] == 0 and not none.mel_lens.any()


def test_energy_control_is_applied_not_pitch_control():
    """The reference scales energy by p_control (bug); fastcpu uses e_control."""
    cfg = ModelConfig(**SMALL)
    model = FastSpeech2(cfg).eval()
    b = make_batch(np.random.default_rng(4), 2, 10, 40)
    with no_grad():
        base = model.infer(b["texts"], b["src_lens"])
        e2 = model.infer(b["texts"], b["src_lens"], e_control=2.0)
    np.testing.assert_allclose(e2.energy.data, base.energy.data * 2, rtol=1e-6)
    np.testing.assert_array_equal(e2.pitch.data, base.pitch.data)


def test_load_state_dict_names_problems():
    model = FastSpeech2(ModelConfig(**SMALL))
    sd = dict(model.state_dict())
    sd.pop("mel_linear.bias")
    sd["encoder.src_word_emb.weight"] = np.zeros((10, 32), np.float32)
    with pytest.raises(KeyError, match="mel_linear.bias.*src_word_emb.weight: expected"):
        model.load_state_dict(sd)


def test_fresh_bins_are_torch_linspace_bit_for_bit():
    """The reference makes its bins with float32 torch.linspace; ours equal them exactly (a
    float64 linspace cast to float32 differed in 56 of 255 LJSpeech pitch edges)."""
    from fastcpu.models.fastspeech2 import linspace_f32
    rng = np.random.default_rng(0)
    ranges = [tuple(sorted(rng.normal(0, 5, 2))) for _ in range(200)] + [(0.0, 1.0), (-3, 3)]
    for n in (2, 3, 16, 255, 256, 1001):
        for lo, hi in ranges[:60] if n != 255 else ranges:
            np.testing.assert_array_equal(linspace_f32(lo, hi, n),
                                          torch.linspace(lo, hi, n).numpy(), f"{lo} {hi} {n}")
    c = load_config(config_path("ljspeech")).model
    ours = FastSpeech2(c).state_dict()
    theirs = TorchFastSpeech2(c).state_dict()
    for k in ("variance_adaptor.pitch_bins", "variance_adaptor.energy_bins"):
        assert np.array_equal(ours[k], theirs[k].numpy()), k
    # log quantization: the same float32 edges; exp correctly rounded, within torch's 1 ulp
    lo, hi = 71.0, 800.0
    theirs = torch.exp(torch.linspace(np.log(lo), np.log(hi), 255)).numpy()
    ours = FastSpeech2(dataclasses.replace(c, pitch_quantization="log",
                                           pitch_range=[lo, hi])).state_dict()
    got = ours["variance_adaptor.pitch_bins"]
    assert np.max(np.abs(got.view(np.int32) - theirs.view(np.int32))) <= 1
