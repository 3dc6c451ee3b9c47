"""Interop with the files the reference actually writes: its checkpoints (numpy-float64 lr from
its ScheduledOptim, Adam state indexed by position) both ways, its three YAML files, a
DataParallel prefix; a fastcpu checkpoint continuing in PyTorch with the same next step."""
import copy
import dataclasses
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from fastcpu.startup import config_path
from fastcpu import checkpoint, nn
from fastcpu.config import (Config, ModelConfig, OptimizerConfig, from_dict, from_reference,
                            load_config)
from fastcpu.convert import main as convert_main
from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus, collate
from fastcpu.models import FastSpeech2, FastSpeech2Loss
from fastcpu.optim import Adam
from fastcpu.testing.torch_reference import (ScheduledOptim, TorchFastSpeech2,
                                             reference_train_step, save_reference_checkpoint,
                                             write_reference_config)

# a small model the reference's YAML can describe (its PostNet is hard-coded: 5 x 512, k 5)
REF_MODEL = dict(encoder_layer=1, decoder_layer=1, encoder_hidden=32, decoder_hidden=32,
                 conv_filter_size=64, vp_filter_size=32, n_bins=16, max_seq_len=400)
REF_OPT = dict(warm_up_step=10, anneal_steps=[2, 4], anneal_rate=0.5)


def _cfg():
    c = Config(name="RefSmall", model=ModelConfig(**REF_MODEL),
               optimizer=OptimizerConfig(**REF_OPT))
    c.train.batch_size = 4
    return c.validate()


def corpus_batch(n=4, start=0):
    """A real batch of the bundled corpus, as the dict the torch helpers take."""
    c = PreprocessedCorpus(BUNDLED_CORPUS, "train.txt")
    b = collate([c.load(i) for i in range(start, start + n)])
    return b, dict(texts=b.texts, src_lens=b.text_lens, mels=b.mels, mel_lens=b.mel_lens,
                   max_mel_len=b.max_mel_len, pitches=b.pitches, energies=b.energies,
                   durations=b.durations)


def reference_run(tmp_path, steps=3, name=None):
    """A checkpoint exactly as the reference's train.py writes one after ``steps`` updates, and
    its config directory. -> (pth path, config dir, torch model, ScheduledOptim)."""
    cfg = _cfg()
    torch.manual_seed(0)
    model = TorchFastSpeech2(cfg.model)
    optim = ScheduledOptim(model, cfg.optimizer, cfg.model.encoder_hidden)
    for k in range(steps):
        reference_train_step(model, optim, corpus_batch(4, 4 * k)[1])
    path = tmp_path / (name or f"{steps}.pth.tar")
    save_reference_checkpoint(path, model, optim)
    conf = write_reference_config(tmp_path / "config" / "RefSmall", cfg, BUNDLED_CORPUS)
    return path, conf, model, optim


def _assert_same(a, b, where=""):
    """Equal values of equal types, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (where, type(a), type(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b and float(a) == float(b) if isinstance(a, float) else a == b, \
            (where, a, b)


def _load_any(path):
    return torch.load(path, map_location="cpu", weights_only=False)    # test files: trusted


def test_a_reference_checkpoint_has_numpy_lr_that_plain_safe_loading_refuses(tmp_path):
    path, *_ = reference_run(tmp_path, steps=2)
    ck = _load_any(path)
    assert type(ck["optimizer"]["param_groups"][0]["lr"]) is np.float64
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)


def test_reference_to_fastcpu_to_reference_bit_for_bit(tmp_path, capsys):
    src, conf, model, optim = reference_run(tmp_path, steps=3)
    mid, back = tmp_path / "3.safetensors", tmp_path / "back.pth.tar"
    assert convert_main([str(src), str(mid), "--reference-config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "run config: --reference-config" in out and "resumes at step 3" in out
    assert convert_main([str(mid), str(back)]) == 0
    a, b = _load_any(src), torch.load(back, weights_only=True)     # the result loads safely
    assert [type(g["lr"]) for g in b["optimizer"]["param_groups"]] == [float]
    b["optimizer"]["param_groups"][0]["lr"] = np.float64(b["optimizer"]["param_groups"][0]["lr"])
    _assert_same(a, b, "checkpoint")                 # model, every moment, steps, param_groups
    # the fastcpu file: weights and moments by name, the frozen tables without state
    t, meta = checkpoint.load(mid)
    names = [n for n, _ in model.named_parameters()]
    state = a["optimizer"]["state"]
    for i, n in enumerate(names):
        if i in state:
            np.testing.assert_array_equal(t[f"optim/exp_avg/{n}"], state[i]["exp_avg"].numpy())
            np.testing.assert_array_equal(t[f"optim/exp_avg_sq/{n}"],
                                          state[i]["exp_avg_sq"].numpy())
        else:
            assert n.endswith(("position_enc", "_bins")) and f"optim/exp_avg/{n}" not in t
    assert meta["state"]["step"] == 3 and meta["optimizer_step"] == 3
    assert meta["config"]["model"]["encoder_hidden"] == 32
    assert meta["config"]["optimizer"]["anneal_steps"] == [2, 4]
    assert meta["config"]["data"]["path"] == str(BUNDLED_CORPUS)
    assert meta["config"]["model"]["pitch_range"] == json.loads(
        (BUNDLED_CORPUS / "stats.json").read_text())["pitch"][:2]


def _as_numpy1_pickle(src, dst):
    """The same checkpoint as the reference's numpy 1.x environment pickles it (the scalar
    constructor lives in numpy.core there)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)


def test_convert_cli_reads_numpy1_and_numpy2_pickles_and_nothing_else(tmp_path, capsys):
    src, conf, *_ = reference_run(tmp_path, steps=2)
    old = tmp_path / "2-numpy1.pth.tar"
    _as_numpy1_pickle(src, old)
    for f in (src, old):
        r = subprocess.run([sys.executable, "-m", "fastcpu.convert", str(f),
                            str(f) + ".safetensors"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    t1, m1 = checkpoint.load(str(src) + ".safetensors")
    t2, m2 = checkpoint.load(str(old) + ".safetensors")
    assert m1["param_groups"] == m2["param_groups"] and t1.keys() == t2.keys()
    # without a config that fits, the LJSpeech defaults do not: weights only, with a note
    assert "config" not in m1 and "--init-from" in r.stdout
    # a file pickling anything else (here: a function that would run) is refused
    evil = tmp_path / "evil.pth.tar"
    ck = _load_any(src)
    ck["hook"] = print
    torch.save(ck, evil)
    assert convert_main([str(evil), str(tmp_path / "e.safetensors")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "refused: it pickles print," in line
    assert not (tmp_path / "e.safetensors").exists()


def test_a_dataparallel_prefix_is_stripped_with_a_note(tmp_path, capsys):
    src, conf, *_ = reference_run(tmp_path, steps=1)
    ck = _load_any(src)
    ck["model"] = type(ck["model"])((f"module.{k}", v) for k, v in ck["model"].items())
    dp = tmp_path / "dp.pth.tar"
    torch.save(ck, dp)
    assert convert_main([str(dp), str(tmp_path / "dp.safetensors"),
                         "--reference-config", str(conf)]) == 0
    assert "'module.' prefix; stripped" in capsys.readouterr().out
    t, meta = checkpoint.load(tmp_path / "dp.safetensors")
    assert not [k for k in t if "module." in k]
    assert "model/encoder.src_word_emb.weight" in t and "config" in meta


def test_reference_config_errors_name_the_file_and_key(tmp_path, capsys):
    src, conf, *_ = reference_run(tmp_path, steps=1)
    text = (conf / "model.yaml").read_text().replace("  n_bins: 16\n", "")
    (conf / "model.yaml").write_text(text)
    assert convert_main([str(src), str(tmp_path / "x.safetensors"),
                         "--reference-config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"{conf / 'model.yaml'}: missing variance_embedding.n_bins" in err
    # a config that does not describe the file: one line, nothing written
    write_reference_config(conf, dataclasses.replace(_cfg(), model=ModelConfig(**dict(
        REF_MODEL, conv_filter_size=96))), BUNDLED_CORPUS)
    assert convert_main([str(src), str(tmp_path / "x.safetensors"),
                         "--reference-config", str(conf)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "do not fit --reference-config" in line and "pos_ffn.w_1.weight" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_from_reference_reads_the_reference_ljspeech_files(tmp_path):
    """The reference's shipped LJSpeech values (spec §1) give this project's ljspeech.yaml."""
    ours = load_config(config_path("ljspeech"))
    d = write_reference_config(tmp_path / "config" / "LJSpeech", ours, "./preprocessed/none")
    data, notes = from_reference(d)
    got = from_dict(Config, data, "x").validate()
    assert got.model == dataclasses.replace(ours.model)
    for k in ("betas", "eps", "weight_decay", "grad_clip_thresh", "warm_up_step",
              "anneal_steps", "anneal_rate", "schedule", "lr"):
        assert getattr(got.optimizer, k) == getattr(ours.optimizer, k), k
    assert got.train.batch_size == 16 and got.train.total_step == 900000
    assert notes and "no stats.json" in notes[0]


def test_a_converted_reference_checkpoint_resumes_in_fastcpu(tmp_path):
    src, conf, model, optim = reference_run(tmp_path, steps=3)
    conv = tmp_path / "3.safetensors"
    assert convert_main([str(src), str(conv), "--reference-config", str(conf)]) == 0
    r = subprocess.run([sys.executable, "-m", "fastcpu.train", "--resume-from", str(conv),
                        "--output-dir", str(tmp_path / "runs"), "--set", "train.total_step=5",
                        "--set", "train.log_step=1"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    assert "converted from a reference checkpoint: training continues at step 3" in r.stdout
    recs = [json.loads(x) for x in (tmp_path / "runs" / "RefSmall" / "metrics.jsonl")
            .read_text().splitlines()]
    steps = [x for x in recs if x["event"] == "train"]
    assert [x["step"] for x in steps] == [4, 5]
    want = [float(optim.init_lr * ScheduledOptim.lr_scale(
        type("S", (), {"current_step": s, "n_warmup_steps": 10, "anneal_steps": [2, 4],
                       "anneal_rate": 0.5})())) for s in (4, 5)]
    np.testing.assert_allclose([x["lr"] for x in steps], want, rtol=1e-12)


def test_a_fastcpu_checkpoint_continues_in_pytorch_with_our_next_step(tmp_path):
    """A checkpoint written by `python -m fastcpu.train`, converted to .pth.tar, resumed the
    reference's way (Adam.load_state_dict, ScheduledOptim at the step): one PyTorch step equals
    fastcpu's next step from the same file, tensor by tensor (relative norm <= 1e-6)."""
    sets = []
    for k in ("encoder_dropout", "decoder_dropout", "vp_dropout", "postnet_dropout"):
        sets += ["--set", f"model.{k}=0.0"]                  # no masks: both sides exact
    sets += ["--set", "optimizer.schedule=noam", "--set", "optimizer.lr=null",
             "--set", "optimizer.warm_up_step=10", "--set", "optimizer.weight_decay=0.01"]
    r = subprocess.run([sys.executable, "-m", "fastcpu.train", "--config", "tiny",
                        "--output-dir", str(tmp_path), "--max-steps", "3", *sets],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "tiny" / "checkpoints" / "final.safetensors"
    pth = tmp_path / "final.pth.tar"
    assert convert_main([str(ck), str(pth)]) == 0
    tensors, meta = checkpoint.load(ck)
    cfg = from_dict(Config, meta["config"], "ck")
    b, batch = corpus_batch(4, 40)

    # fastcpu's next step from the file
    ours = FastSpeech2(cfg.model)
    opt = Adam(nn.flatten_parameters(ours), cfg.optimizer, cfg.model.decoder_hidden)
    checkpoint.apply_training_state(tensors, meta, ours, opt)
    assert opt.t == 3
    losses = FastSpeech2Loss()(ours.forward_batch(b), b.mels, b.pitches, b.energies, b.durations)
    losses["total"].backward()
    opt.step()

    # the reference's resume: weights strict, Adam state, ScheduledOptim(current_step=3)
    loaded = torch.load(pth, weights_only=True)
    g = loaded["optimizer"]["param_groups"][0]
    assert g["betas"] == (0.9, 0.98) and g["weight_decay"] == 0.01

    def pytorch_step(dtype):
        ref = copy.deepcopy(loaded)           # Adam.step increments the loaded step in place
        theirs = TorchFastSpeech2(cfg.model)
        theirs.load_state_dict(ref["model"])
        theirs.to(dtype)
        so = ScheduledOptim(theirs, cfg.optimizer, cfg.model.encoder_hidden, current_step=3)
        so._optimizer.load_state_dict(ref["optimizer"])      # casts the moments to dtype
        assert g["lr"] == pytest.approx(float(so.init_lr * so.lr_scale()), rel=1e-12)
        frozen = {i for i, (n, _) in enumerate(theirs.named_parameters())
                  if n.endswith(("position_enc", "_bins"))}
        assert set(ref["optimizer"]["state"]) == set(range(len(g["params"]))) - frozen
        reference_train_step(theirs, so, batch, cfg.optimizer.grad_clip_thresh)
        return {n: p.detach().double().numpy() for n, p in theirs.named_parameters()}

    sd = ours.state_dict()

    def differences(theirs):
        rel = {}
        for n, w in theirs.items():
            a = sd[n].astype(np.float64)
            moved = np.linalg.norm(w - tensors[f"model/{n}"])
            assert n.endswith(("position_enc", "_bins")) or moved > 0, n  # the step happened
            if n.startswith("postnet.") and n.endswith(".0.conv.bias"):
                # a conv bias feeding a training-mode BatchNorm has a gradient of exactly 0 in
                # maths (BN removes the mean): both sides step on rounding noise, which Adam
                # scales up to the size of a real update. They agree to within that update.
                assert np.linalg.norm(a - w) <= moved, n
                continue
            rel[n] = np.linalg.norm(a - w) / max(np.linalg.norm(w), 1e-30)
        assert len(rel) >= 30 and max(rel.values()) > 0       # compared, not trivially equal
        return rel

    # PyTorch's step in float64 from the loaded state: ours (float32) is within 1e-6 of it,
    # tensor by tensor
    rel = differences(pytorch_step(torch.float64))
    assert max(rel.values()) <= 1e-6, max(rel.items(), key=lambda x: x[1])
    # and in float32, as a user resumes: the same except where PyTorch's own float32 gradient
    # is further from float64 (PostNet's first BatchNorm bias: 6.5e-6 against our 2.6e-7)
    rel32 = differences(pytorch_step(torch.float32))
    assert sorted(rel32.values())[-2] <= 1e-6 and max(rel32.values()) <= 1e-5, \
        sorted(rel32.items(), key=lambda x: -x[1])[:3]
