"""Schedules (the reference's Noam table) and the Adam wrapper over flat buffers."""
import numpy as np
import pytest

from fastcpu.startup import config_path
from fastcpu import nn
from fastcpu.config import ModelConfig, OptimizerConfig, load_config
from fastcpu.models import FastSpeech2
from fastcpu.optim import Adam, Schedule

NOAM_TABLE = [(1, 2.4705e-7), (1000, 2.4705e-4), (4000, 9.8821e-4), (10000, 6.2500e-4),
              (100000, 1.9764e-4), (300000, 1.1411e-4), (300001, 3.4233e-5),
              (400001, 8.8939e-6), (500001, 2.3865e-6), (900000, 1.7788e-6)]


@pytest.mark.parametrize("t,lr", NOAM_TABLE)
def test_noam_matches_the_reference_table(t, lr):
    s = Schedule(load_config(config_path("ljspeech")).optimizer, 256)
    assert s(t) == pytest.approx(lr, rel=1e-4)


def test_exponential_and_cosine_schedules():
    e = Schedule(OptimizerConfig(lr=1e-3, schedule="exponential", warm_up_step=10,
                                 decay_rate=0.9), 256)
    assert e(5) == pytest.approx(5e-4) and e(10) == pytest.approx(1e-3)
    assert e(12) == pytest.approx(1e-3 * 0.81)
    c = Schedule(OptimizerConfig(lr=1e-3, schedule="cosine", warm_up_step=10, total_step=110,
                                 min_lr=1e-5), 256)
    assert c(10) == pytest.approx(1e-3) and c(60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert c(110) == pytest.approx(1e-5) and c(500) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        c(0)


def test_adam_skips_nonfinite_without_advancing():
    model = nn.Linear(4, 3)
    buf = nn.flatten_parameters(model)
    opt = Adam(buf, OptimizerConfig(lr=1e-2, schedule="constant", warm_up_step=0))
    before = buf.data.copy()
    buf.grad[:] = np.nan
    norm, lr, stepped = opt.step()
    assert not stepped and not np.isfinite(norm) and opt.t == 0
    np.testing.assert_array_equal(buf.data, before)
    buf.grad[:] = 0.1
    assert opt.step()[2] and opt.t == 1 and not np.array_equal(buf.data, before)


def test_multi_speaker_adds_speaker_embedding_last():
    cfg = load_config(config_path("ljspeech"), ["model.multi_speaker=true",
                                                "model.n_speakers=219"]).model
    m = FastSpeech2(cfg)
    assert list(m.state_dict())[-1] == "speaker_emb.weight"
    assert m.num_parameters() == 35_215_425                 # the issue-log figure (spec §2.6)
    small = FastSpeech2(ModelConfig(encoder_layer=1, decoder_layer=1, encoder_hidden=16,
                                    decoder_hidden=16, conv_filter_size=8, vp_filter_size=8,
                                    postnet_embedding_dim=8, multi_speaker=True, n_speakers=3)).eval()
    texts = np.array([[5, 6, 7], [8, 9, 0]])
    d = np.array([[1, 2, 1], [2, 2, 0]])
    a = small(np.array([0, 0]), texts, [3, 2], d_targets=d, mel_lens=d.sum(1),
              p_targets=np.zeros((2, 3)), e_targets=np.zeros((2, 3)))
    b = small(np.array([0, 2]), texts, [3, 2], d_targets=d, mel_lens=d.sum(1),
              p_targets=np.zeros((2, 3)), e_targets=np.zeros((2, 3)))
    np.testing.assert_array_equal(a.mel.data[0], b.mel.data[0])     # same speaker, same output
    assert not np.allclose(a.mel.data[1], b.mel.data[1])            # the speaker changes it
