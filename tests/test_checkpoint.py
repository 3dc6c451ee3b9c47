"""Checkpoints: safetensors + JSON, atomic, checksummed; reference conversion both ways."""
import numpy as np
import pytest
import torch

from fastcpu import checkpoint, nn
from fastcpu.config import ModelConfig, OptimizerConfig
from fastcpu.convert import main as convert_main
from fastcpu.models import FastSpeech2
from fastcpu.optim import Adam
from fastcpu.testing.torch_reference import TorchFastSpeech2
from tests.test_fastspeech2 import SMALL, make_batch, run_theirs


def test_round_trip_and_metadata(tmp_path):
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, np.int64)}
    p = checkpoint.save(tmp_path / "x.safetensors", t, {"step": 3, "rng": [1, 2]})
    got, meta = checkpoint.load(p)
    np.testing.assert_array_equal(got["a"], t["a"])
    assert got["n"].dtype == np.int64 and meta == {"step": 3, "rng": [1, 2]}
    assert not list(tmp_path.glob(".*tmp*"))               # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-header", "empty"])
def test_corruption_is_refused_naming_the_file(tmp_path, damage):
    p = checkpoint.save(tmp_path / "c.safetensors", {"w": np.ones(1000, np.float32)},
                        {"step": 1})
    blob = bytearray(p.read_bytes())
    if damage == "truncate":
        blob = blob[:len(blob) // 2]
    elif damage == "flip-data":
        blob[-100] ^= 0x01
    elif damage == "flip-header":
        blob[30] ^= 0x20
    else:
        blob = b""
    p.write_bytes(bytes(blob))
    with pytest.raises(checkpoint.CheckpointError, match="c.safetensors"):
        checkpoint.load(p)


def test_model_and_optimizer_state_round_trip(tmp_path):
    model = FastSpeech2(ModelConfig(**SMALL))
    buf = nn.flatten_parameters(model)
    opt = Adam(buf, OptimizerConfig(lr=1e-3, schedule="constant", warm_up_step=0))
    buf.grad[:] = np.random.default_rng(0).standard_normal(buf.grad.shape).astype(np.float32)
    opt.step()
    checkpoint.save_training_state(tmp_path / "s.safetensors", model, opt, {"epoch": 2})
    m2 = FastSpeech2(ModelConfig(**SMALL))
    o2 = Adam(nn.flatten_parameters(m2), OptimizerConfig(lr=1e-3))
    meta = checkpoint.load_training_state(tmp_path / "s.safetensors", m2, o2)
    assert meta["epoch"] == 2 and o2.t == 1
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    np.testing.assert_array_equal(o2.m, opt.m)
    np.testing.assert_array_equal(o2.v, opt.v)


def _reference_checkpoint(path, steps=2):
    """What the reference's train.py saves: {"model": ..., "optimizer": Adam.state_dict()}."""
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(0)
    model = TorchFastSpeech2(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    batch = make_batch(np.random.default_rng(0), 2, 8, 30)
    for _ in range(steps):
        opt.zero_grad()
        run_theirs(model, batch)[1]["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    return cfg


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_reference_checkpoint_converts_to_fastcpu_and_back_bit_exactly(tmp_path, capsys):
    src = tmp_path / "2.pth.tar"
    cfg = _reference_checkpoint(src)
    mid, back = tmp_path / "2.safetensors", tmp_path / "back.pth.tar"
    assert convert_main([str(src), str(mid)]) == 0
    assert convert_main([str(mid), str(back)]) == 0
    a = torch.load(src, weights_only=True)
    b = torch.load(back, weights_only=True)
    _assert_same(a, b, "checkpoint")
    # and fastcpu can continue from it: model weights and Adam moments land by name
    model = FastSpeech2(cfg)
    opt = Adam(nn.flatten_parameters(model), OptimizerConfig())
    checkpoint.load_training_state(mid, model, opt)
    assert opt.t == 2
    ref_state = a["optimizer"]["state"]
    names = [n for n, p in model.named_parameters()]
    i = names.index("decoder.layer_stack.0.pos_ffn.w_1.weight")
    np.testing.assert_array_equal(opt.state_tensors()["exp_avg/" + names[i]],
                                  ref_state[i]["exp_avg"].numpy())
    for k, v in a["model"].items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy())


def test_converter_errors_are_one_clear_line(tmp_path, capsys):
    assert convert_main([str(tmp_path / "missing.pth.tar"), str(tmp_path / "o.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    assert convert_main([str(bad), str(tmp_path / "o")]) == 2
    assert "an unknown kind -> an unknown kind" in capsys.readouterr().err
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    assert convert_main([str(junk), str(tmp_path / "o.safetensors")]) == 2
    assert "cannot read" in capsys.readouterr().err
